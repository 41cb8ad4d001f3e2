"""Jobs: load a model, run the public verbs, write results. One module per ``rotaquant`` command.

* :mod:`.rotate` - ``rotaquant rotate``: load, rotate (fused R1/R2), export an HF folder.
* :mod:`.ptq` - ``rotaquant ptq``: load, rotate, quantize, evaluate, optionally export; JSON.
* :mod:`.learn` - ``rotaquant optimize``: load, learn R1/R2, write rotation files.
* :mod:`.eval` - ``rotaquant eval``: load, perplexity and zero-shot tasks.
* :mod:`.analyze` - ``rotaquant analyze``: layer-wise error of several methods -> CSV, PNGs.
* :mod:`.demo` - ``rotaquant demo``: the quick-start table.
* :mod:`.files` - the rotation files and learning checkpoints the jobs write (atomically).

The algorithm packages (``rotation``, ``quant``, ``learn``, ``eval``) never parse arguments nor
write result files; the jobs do both of the latter, the CLI (:mod:`rotaquant.cli`) the former.
"""
