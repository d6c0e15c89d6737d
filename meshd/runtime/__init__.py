"""meshd.runtime"""
