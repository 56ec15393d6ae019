/* failpoint.c: see failpoint.h. */
#include "common/failpoint.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void moeq_failpoint(const char *name, const char *truncate_path)
{
    const char *armed = getenv("MOEQ_FAILPOINT");
    if (!armed || strcmp(armed, name))
        return;
    struct stat st;
    if (truncate_path && stat(truncate_path, &st) == 0 &&
        truncate(truncate_path, st.st_size / 2) != 0)
        st.st_size = 0; /* the kill follows either way */
    raise(SIGKILL);
}
