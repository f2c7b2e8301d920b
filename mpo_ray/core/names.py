"""Names that become paths: a store version (a night id) must stay one plain directory name."""

import re

VERSION_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")  # no '/', no '..': nothing outside versions/
