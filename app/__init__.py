"""The roof layer: process wiring, the command line and the runtime.

The only package that knows every stage. It builds the model registry, the pipelines, the result
producer and the delivery planner and hands them to the stages below through typed interfaces.
"""
