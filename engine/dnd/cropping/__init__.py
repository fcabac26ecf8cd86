"""cropping"""
