// libopendkim (Debian libopendkim-dev): DKIM signing and verification (RFC 6376, RFC 8463).
#include <sys/types.h>
#include <stdbool.h>
#include <stdint.h>
#include <opendkim/dkim.h>
