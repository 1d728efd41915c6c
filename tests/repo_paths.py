"""Where the repository and the tests are, for tests in any folder of the mirrored tree."""
import os

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
