"""meshd.core"""
