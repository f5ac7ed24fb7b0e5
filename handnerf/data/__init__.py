"""handnerf.data"""
