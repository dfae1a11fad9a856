"""The outputs of the exporter; each implements `exporter.dispatch.Sink`."""
