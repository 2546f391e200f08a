"""Nothing made is lost (issue 10 item 5): S3 down, 502 with inline copies, S3 up, object
appears, the webhook says so, and no file is left on the worker. Against a real SeaweedFS
cut off and reconnected by a TCP forwarder (tests/io/outage.py), and the ComfyUI double."""

from __future__ import annotations

from tests.io.redelivery_round import s3_outage_round


async def test_spooled_outputs_reach_s3_when_it_is_back(seaweed, comfy_double, make_bridge, tmp_path):
    done = await s3_outage_round(seaweed, comfy_double, make_bridge, tmp_path)
    assert done.told["output"][0]["url"]
