"""meshd.api"""
