"""Framework layers translated into :mod:`convsv`'s terms, once per framework.

Each module reads one framework's convolution objects -- kernel, layout,
stride, dilation, groups, padding, input size -- and answers each modelling
question (is this circular padding a circulant map? which zeros does
"same" add?) with one rule from :mod:`convsv._layout`. The adapters
(:mod:`convsv.torch`, ...) and the model reader behind ``convsv analyze``
both call them, so a layer gets the same answer everywhere. Nothing here
imports a framework at import time.
"""
