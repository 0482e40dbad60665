"""The canvas bundle BPMN Studio Web serves, whole or broken by a bad deploy."""

from __future__ import annotations

_BUNDLE_HEAD = """/*! BPMN Studio Web canvas {tag} */
(function (global) {{
  "use strict";
  var VERSION = "{tag}";
  var SHAPES = {{
"""
_BUNDLE_SHAPE = (
    '    "{name}": {{ width: {width}, height: {height}, '
    "draw: function (ctx, x, y) {{ ctx.strokeRect(x, y, {width}, {height}); "
    'ctx.fillText("{name}", x + 4, y + 14); }} }},\n'
)
_BUNDLE_TAIL = """  }};
  function render(canvas, elements) {{
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    elements.forEach(function (element) {{
      var shape = SHAPES[element.type];
      if (!shape) {{ throw new Error("Unknown BPMN element " + element.type); }}
      shape.draw(ctx, element.x, element.y);
    }});
    return elements.length;
  }}
  global.BpmnStudio = {{ version: VERSION, render: render, shapes: SHAPES }};
}})(window);
"""
_BPMN_ELEMENTS = (
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent",
    "boundaryEvent", "task", "userTask", "serviceTask", "scriptTask", "sendTask",
    "receiveTask", "manualTask", "businessRuleTask", "callActivity", "subProcess",
    "exclusiveGateway", "parallelGateway", "inclusiveGateway", "eventBasedGateway",
    "complexGateway", "dataObjectReference", "dataStoreReference", "participant",
    "lane", "textAnnotation", "group",
)  # fmt: skip


def render_bundle(tag: str, *, broken: bool = False) -> bytes:
    """Return the canvas bundle for a version; broken cuts it off mid-statement."""
    shapes = "".join(
        _BUNDLE_SHAPE.format(name=name, width=36 + 8 * (i % 9), height=36 + 4 * (i % 5))
        for i, name in enumerate(_BPMN_ELEMENTS)
    )
    body = (_BUNDLE_HEAD.format(tag=tag) + shapes + _BUNDLE_TAIL.format()).encode()
    if broken:
        # What a half-written deploy leaves behind: a truncated file, then garbage.
        return body[: len(body) * 3 // 5] + b"\x00\x00<!DOCTYPE html><title>502</title>"
    return body
