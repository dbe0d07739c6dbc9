"""The channels file of the benchmarks: the inbox channel alone, throttled per second window."""

CHANNELS = """
channels:
  inbox:
    window_seconds: 1
    providers:
      - name: mariadb
        type: inbox
"""
