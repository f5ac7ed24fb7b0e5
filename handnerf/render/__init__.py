"""handnerf.render"""
