"""The ``amagi serve`` service: listener → database queue → workers → deliveries, one process.

Everything a worker needs is in the database and the spool, so a crash loses nothing:
at restart, unfinished jobs are picked up again (lease expiry) and unsent results are sent.
"""
