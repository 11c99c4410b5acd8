"""GANPaint: paint concepts into generated scenes in the browser (``server``, ``engine``, ``masks``), from a concepts
file made by ``gandissect paint prepare`` (``concepts``); and the human study of a repair (``ratings``)."""
