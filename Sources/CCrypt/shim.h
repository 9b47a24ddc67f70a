// libxcrypt (Debian libcrypt-dev): crypt(3) hashes for SMTP AUTH (yescrypt, bcrypt, sha512-crypt).
#include <crypt.h>
