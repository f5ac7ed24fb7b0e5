"""handnerf.hand"""
