#include <sys/types.h>
#include <sys/socket.h>
#include <libmilter/mfapi.h>

/* smfi_setmlreply is variadic, which Swift cannot call: this gives it up to 32 lines (libmilter's
   limit) from an array; the entries after the last line are NULL, which ends the list. */
static inline int sluice_smfi_setmlreply(SMFICTX *ctx, const char *rcode, const char *xcode,
                                         const char *const lines[32]) {
    return smfi_setmlreply(ctx, rcode, xcode,
        lines[0], lines[1], lines[2], lines[3], lines[4], lines[5], lines[6], lines[7],
        lines[8], lines[9], lines[10], lines[11], lines[12], lines[13], lines[14], lines[15],
        lines[16], lines[17], lines[18], lines[19], lines[20], lines[21], lines[22], lines[23],
        lines[24], lines[25], lines[26], lines[27], lines[28], lines[29], lines[30], lines[31],
        (const char *)0);
}
