"""meshd.testing"""
