"""handnerf.model"""
