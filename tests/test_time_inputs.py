"""Months of image time ranges, computed in the graph (Galileo / Presto inputs)."""

import datetime

import numpy as np

from rskeras.models.time_inputs import input_months, month_of_days, months_from_timestamps


def test_month_of_days_matches_the_calendar():
    days = np.arange(-150000, 150000, 13)  # 1559 .. 2380, leap years and centuries included
    expected = [(datetime.date(1970, 1, 1) + datetime.timedelta(days=int(d))).month - 1 for d in days]
    np.testing.assert_array_equal(month_of_days(days).numpy(), expected)


def test_months_of_range_centres_and_unknown_ranges():
    def posix(text):
        return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()

    ranges = np.array([[[posix("2024-01-20"), posix("2024-02-20")],  # centre 4 Feb
                        [posix("2023-12-31T10:00"), posix("2023-12-31T10:00")],
                        [np.nan, np.nan]]])
    np.testing.assert_array_equal(months_from_timestamps(ranges, 5).numpy(), [[1, 11, 5]])


def test_input_months_uses_the_first_key_with_timestamps():
    ts = np.array([[[0.0, 0.0]]])  # 1970-01-01
    later = np.array([[[2e7, 2e7]]])  # August 1970
    context = {"s2": np.zeros((1, 1, 2, 2, 10)), "s2_timestamps": later, "s1_timestamps": ts, "s1": np.zeros((1, 1, 2, 2, 2))}
    assert input_months(context, ["s1", "s2"], 5).numpy().tolist() == [[0]]
    assert input_months(context, ["s2", "s1"], 5).numpy().tolist() == [[7]]
    assert input_months({"s2": np.zeros((1, 1, 2, 2, 10))}, ["s1", "s2"], 5) is None
