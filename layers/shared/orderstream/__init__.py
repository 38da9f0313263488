"""orderstream: the order-placed event model and the plumbing every function shares.

Import submodules directly. Nothing here imports kafka-python, so consumers that only decode
events never pay for the Kafka client at cold start.
"""
