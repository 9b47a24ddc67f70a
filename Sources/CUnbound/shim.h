// libunbound (Debian libunbound-dev): the validating resolver behind Sluice's DNS.
#include <unbound.h>
