"""Keep a widget's layer choices current: call back when layers are added, removed, moved or renamed."""

from __future__ import annotations

from collections.abc import Callable


class LayerWatch:
    """Calls ``callback()`` whenever the viewer's layer list changes or a layer is renamed, until
    :meth:`close` (call it when the widget closes: the viewer outlives dock widgets)."""

    def __init__(self, viewer, callback: Callable[..., None]):
        self.viewer = viewer
        self.callback = callback
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(callback)
        events.inserted.connect(self._on_inserted)
        for layer in viewer.layers:
            layer.events.name.connect(callback)

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.callback)

    def close(self) -> None:
        try:
            events = self.viewer.layers.events
            for event in (events.inserted, events.removed, events.moved):
                event.disconnect(self.callback)
            events.inserted.disconnect(self._on_inserted)
            for layer in self.viewer.layers:
                layer.events.name.disconnect(self.callback)
        except Exception:  # the viewer may be gone already
            pass
