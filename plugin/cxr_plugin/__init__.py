"""cxr's Orthanc plugin. Stdlib only: it runs in Orthanc's embedded Debian Python.

``entry.py`` is the file Orthanc loads (``"PythonScript"``) and the only one that imports
``orthanc``; the behaviour lives in :mod:`cxr_plugin.core` and is tested without Orthanc.
"""
