"""handnerf.evaluation"""
