"""The request bodies (pydantic models) and the OpenAPI text of the routes that read their bodies themselves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..modes import get_mode, list_modes
from ..prompt.caption import clean_given_caption
from ..settings import DEFAULT_FLOOR, SearchSettings


class SearchFields(BaseModel):
    """Search settings a request may set (the rest keep their defaults); see SearchSettings."""

    model_config = ConfigDict(extra="forbid")

    mode: str = "best"
    negative: bool = False
    caption: str | None = Field(None, description="Use this caption instead of generating one.")
    # Upper bounds keep one request from holding the shared model worker for minutes.
    beam: int | None = Field(None, le=8)
    max_tokens: int | None = Field(None, le=300)
    candidates: int | None = Field(None, le=8192)
    min_flavors: int | None = Field(None, le=64)
    max_flavors: int | None = Field(None, le=64)
    chunks: bool | None = None
    trace: bool | None = None
    trace_top: int | None = Field(None, le=50)
    floor: float | Literal["off"] | None = Field(
        None, description="Relevance floor (a phrase's margin over its category's median, in standard "
                          "deviations of the image's scores over the whole vocabulary), or \"off\"; "
                          f"omitted or null: the default, {DEFAULT_FLOOR:g}.")

    @field_validator("caption")
    @classmethod
    def _one_line_caption(cls, value: str | None) -> str | None:
        """NUL, CR, LF and other control characters would go into the prompt: one space each."""
        return (clean_given_caption(value) or None) if value is not None else None

    def settings(self) -> SearchSettings:
        given = self.model_dump(exclude={"caption", "image", "url"}, exclude_none=True)
        if given.get("floor") == "off":
            given["floor"] = None
        settings = SearchSettings(score_prompt=True, **given)
        get_mode(settings.mode)  # an unknown mode is the request's error, before any image is read
        return settings


class InterrogateBody(SearchFields):
    """JSON body of POST /v1/interrogate: an image (base64, with or without a data: prefix) or a URL."""

    image: str | None = Field(None, description="Base64 image, optionally a data: URL.")
    url: str | None = Field(None, description="An http(s) URL to fetch (only when the server allows URLs).")


class AnalyzeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    url: str | None = None
    top: int = Field(5, ge=1, le=100)


class A1111AnalyzeBody(BaseModel):
    image: str
    clip_model_name: str | None = None


class A1111PromptBody(A1111AnalyzeBody):
    """The A1111 clip-interrogator extension's request."""

    caption_model_name: str | None = None
    mode: str = Field("fast", description="A registered mode (plugins' included), or caption.")  # the extension's

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value != "caption" and value not in list_modes():
            raise ValueError(f"unknown mode {value!r}; choose one of: {', '.join(list_modes() + ['caption'])}")
        return value


class A1111InterrogateBody(BaseModel):
    """A1111's own /sdapi/v1/interrogate request."""

    image: str
    model: str = "clip"


IMAGE_FORM = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "format": "binary"},
    **{k: {"type": t} for k, t in (("mode", "string"), ("negative", "boolean"), ("caption", "string"),
                                   ("beam", "integer"), ("max_tokens", "integer"), ("candidates", "integer"),
                                   ("min_flavors", "integer"), ("max_flavors", "integer"), ("chunks", "boolean"),
                                   ("floor", "string"))}}}
ANALYZE_FORM = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "format": "binary"}, "top": {"type": "integer"}}}
BATCH_FORM = {"type": "object", "required": ["files"], "properties": {
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "mode": {"type": "string"}, "negative": {"type": "boolean"}, "prefix": {"type": "string"},
    "suffix": {"type": "string"}}}


def body_doc(model: type[BaseModel] | None, form: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAPI for a route that reads its body itself: JSON (``model``'s schema) and/or a multipart ``form``."""
    content: dict[str, Any] = {}
    if model is not None:
        content["application/json"] = {"schema": model.model_json_schema()}
    if form is not None:
        content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}
