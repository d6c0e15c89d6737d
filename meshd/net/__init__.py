"""meshd.net"""
