"""Prints the number of fuzz cases run per surface at the end of the session."""


def pytest_terminal_summary(terminalreporter):
    from tests.fuzz.test_fuzz import SUMMARY

    if SUMMARY:
        terminalreporter.section("fuzz cases")
        for line in SUMMARY:
            terminalreporter.write_line(line)
        total = sum(int(line.split(": ")[1].split()[0]) for line in SUMMARY)
        terminalreporter.write_line(f"fuzz total: {total} cases")
