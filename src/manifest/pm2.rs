//! pm2 import (below).
