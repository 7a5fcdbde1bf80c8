"""The sweep spec: pydantic models and their checks (``models``), and the data it names,
resolved against the spec's folder and loaded once by the driver (``data``)."""
