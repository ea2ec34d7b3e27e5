import pytest
from pydantic import ValidationError

from serve_app.config.ingress import IngressConfig


def config(**overrides) -> dict:
    base = {
        "experiment": "iris-ab",
        "variants": [
            {"name": "champion", "model_uri": "models:/iris@champion", "weight": 90},
            {"name": "challenger", "model_uri": "models:/iris/2", "weight": 10},
        ],
    }
    return {**base, **overrides}


def test_valid_config_and_defaults() -> None:
    parsed = IngressConfig.model_validate(config(sticky_key="X-User-Id"))
    assert parsed.sticky_key == "x-user-id"
    assert parsed.control_variant == "champion"
    assert [v.name for v in parsed.live] == ["champion", "challenger"]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        (
            [{"name": "a", "model_uri": "models:/iris/1", "weight": -1}],
            "greater than or equal to 0",
        ),
        (
            [{"name": "a", "model_uri": "models:/iris/1", "weight": 0}],
            "live variant weights are all zero",
        ),
        (
            [
                {"name": "a", "model_uri": "models:/iris/1", "weight": 1},
                {"name": "a", "model_uri": "models:/iris/2", "weight": 1},
            ],
            "variant names must be unique; repeated: a",
        ),
        (
            [{"name": "a", "model_uri": "models:/iris/1", "shadow": True}],
            "at least one variant must be live",
        ),
        (
            [{"name": "a", "model_uri": "s3://bucket/model", "weight": 1}],
            "model_uri 's3://bucket/model' is not models:/NAME@ALIAS",
        ),
        (
            [{"name": "a", "model_uri": "models:/iris/1", "weight": 1, "shadow": True}],
            "variant 'a' is a shadow and cannot have a weight",
        ),
        ([], "at least 1 item"),
        (
            [{"name": "Champion!", "model_uri": "models:/iris/1", "weight": 1}],
            "should match pattern",
        ),
    ],
)
def test_config_mistakes_are_named(variants: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IngressConfig.model_validate(config(variants=variants))


def test_control_must_be_a_variant() -> None:
    with pytest.raises(ValidationError, match="control 'baseline' is not a variant"):
        IngressConfig.model_validate(config(control="baseline"))


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="weights"):
        IngressConfig.model_validate(config(weights=[1, 2]))
