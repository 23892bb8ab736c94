"""polyplib: the library behind the polyp synthetic-data study notebooks.

The notebooks narrate; this package does the work. One module per concern:
``config`` (typed profiles), ``runs`` (run folders, done-markers, atomic writes),
``data`` (phantom, real loaders, download, splits, preparation) and one package per later stage.
"""
__version__ = "0.1.0"
