"""Sphinx configuration for the convsv documentation."""

import convsv

project = "convsv"
author = "The convsv developers"
copyright = "2026, The convsv developers"
release = convsv.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax copied into _static: the pages' math renders without a network
    "matplotlib.sphinxext.plot_directive",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "benchmark-results.md", "accuracy-results.md"]  # included by their pages
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# numpydoc: validate every public docstring during the (strict) build.
numpydoc_validation_checks = {"all", "ES01", "SA01", "EX01", "GL08"}
numpydoc_xref_param_type = False
numpydoc_show_class_members = False
autodoc_typehints = "none"

html_theme = "pydata_sphinx_theme"
html_title = f"convsv {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_center": [],  # the sidebar has every page, under its section's caption
}
# The theme's sidebar shows one section; this one shows the whole site, captions included.
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["convsv.css"]
html_sidebars = {"**": ["sidebar-nav-full"]}
# Neither the build nor the built pages need a network (the docs session checks the pages).

# Plots are drawn by running their scripts during the build.
plot_include_source = False
plot_html_show_source_link = True
plot_html_show_formats = False
plot_formats = [("png", 100)]
