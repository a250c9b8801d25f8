"""The server layer: train ENet on CARLA, evaluate, export to a blob."""
