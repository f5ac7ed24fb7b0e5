"""handnerf.train"""
