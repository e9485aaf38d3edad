"""Review tasks for images in an object store carry a presigned URL a browser can open."""

from __future__ import annotations

import urllib.request

from test_s3 import BUCKET, SECRET, _jpeg, put, s3  # noqa: F401 - s3 is the fixture

from catdog.db.reviews import Candidate
from catdog.review.tasks import task_for


def test_an_object_store_task_has_a_presigned_url_that_serves_the_image(s3) -> None:  # noqa: F811
    body = _jpeg(3)
    put("pics/cats/a b.jpg", body)
    cand = Candidate(
        image_id=7,
        store=f"s3://{BUCKET}/pics",
        path="cats/a b.jpg",
        reason="doubtful",
        label="cat",
        confidence=0.55,
        margin=0.1,
        model_version="v1",
    )
    url = task_for(cand, expires_s=600)["data"]["image"]
    assert url.startswith(s3.url) and "Signature=" in url and "Expires=" in url
    assert SECRET not in url
    with urllib.request.urlopen(url) as response:  # what Label Studio's browser does
        assert response.read() == body
