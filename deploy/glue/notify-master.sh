#!/bin/sh
# keepalived notify_master: this host takes the LDAP service over.
#
# The glue that rempart-node replaces, written the way admins write it today (DRBD + keepalived
# guides): promote the replicated volume, mount it, start slapd. It is the "glue" column of
# docs/node.md, run by lab/tests/node_glue.rs; do not make it cleverer than that.
# keepalived starts it without waiting for it and ignores its exit code.
#
# Usage (keepalived.conf):  notify_master "/etc/rempart/glue/notify-master.sh /etc/default/rempart-glue"
# The settings file names the paths (see glue.env.example).

. "${1:-/etc/default/rempart-glue}"
exec >>"$LOG" 2>&1
echo "$(date +%T.%N) notify_master: promoting r0"

rempart-repl primary --run-dir "$REPL_RUN" || exit 1

# No kernel nbd module here: the export becomes a file through nbdfuse, then a loop device.
rm -f "$NBDFUSE_PID"
nbdfuse -P "$NBDFUSE_PID" "$FUSE_DIR" "$NBD_URL" &
i=0
while [ ! -s "$NBDFUSE_PID" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
losetup -f --show "$FUSE_DIR/nbd" >"$LOOP_FILE" || exit 1
mount -o noatime "$(cat "$LOOP_FILE")" "$MOUNT_POINT" || exit 1

slapd -f "$SLAPD_CONF" -h "$SLAPD_URLS" || exit 1
echo "$(date +%T.%N) notify_master: slapd started"
