"""meshd.exec"""
