"""The docker-free local stack: a real Kafka-protocol broker, an AWS emulator and the glue that
drives the real handlers from template.yaml. Development only; never shipped in the layer."""
