"""handnerf.synth"""
