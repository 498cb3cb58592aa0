"""Real servers the tests start on free ports (InfluxDB, a Kafka-protocol broker, an S3 server) and the
reachability helpers for the services every machine runs. Each module is a pytest plug-in listed in the
root conftest."""
