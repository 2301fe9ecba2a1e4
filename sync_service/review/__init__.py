"""Human review of alerts: review records, the review web page, reviewer accounts.

Every alert that passes de-duplication and cooldown becomes a review record
(``records.py``); reviewers confirm or dismiss it on the page (``web.py``, served by
``mpd cloud serve`` locally and by ``lambda_app.py`` on AWS); ``service.py`` decides
who is told what, per site (``review: before | after``). See docs/review.md.
"""
