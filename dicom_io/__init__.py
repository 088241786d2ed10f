"""DICOM I/O for the plugin: networking, reading surgical video, writing SR/SEG/KOS.

This package never imports torch or the database (DESIGN.md §2).
"""
