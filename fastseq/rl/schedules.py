"""Exploration schedules (epsilon for DQN)."""


class LinearSchedule:
    """Goes linearly from `start` to `end` over `duration` steps, then stays at `end`."""

    def __init__(self, start, end, duration):
        self.start, self.end, self.duration = float(start), float(end), max(int(duration), 1)

    def __call__(self, step):
        fraction = min(max(step, 0) / self.duration, 1.0)
        return self.start + fraction * (self.end - self.start)
