"""Synthetic labelled sets, below every stage that writes or reads them.

``catalogue`` (method names, labels, folders, which paper value a set may stand beside),
``folder`` (the writer, the reader and the manifest), ``postprocess`` (mask cleaning and acceptance),
``generate`` (pair seeds and the one resumable plan -> generate -> judge -> write loop),
``external`` (any generator's folder of pairs, imported into a run: ``python -m polyplib.synthetic import``)
and ``memorisation`` (near-copies of real training or test images).
"""
