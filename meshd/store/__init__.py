"""meshd.store"""
