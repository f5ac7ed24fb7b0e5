"""handnerf.viewer: ``handnerf view``, an interactive web viewer of a fitted avatar.

Needs the optional ``viewer`` extra (``pip install handnerf[viewer]``: viser). Sits above
:mod:`handnerf.render` and :mod:`handnerf.runs` (it opens runs and renders through
:class:`handnerf.viewer.session.RenderSession`) and below :mod:`handnerf.commands`.
"""
