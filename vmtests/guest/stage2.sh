# Stage 2 of the guest boot, run by busybox sh in the final root, from the working tree. The
# initramfs has done all the setting up; this only starts the job: one command (mode "exec", the
# fast path, no Python on it) or the agent (mode "agent": many commands, file copies).
set -a
. /vmtest/env
set +a
read -r mode </vmtest/mode
cd /root 2>/dev/null || cd /

finish() {
    sync
    exec /bin/busybox reboot -f
}

# Rebuild argv from one file per argument (the command, or the agent's argv, which the host
# makes with vmtests.guest.command). The "x" guard keeps trailing newlines, so every byte
# survives and no argument is ever re-split or unquoted on the way in.
set --
for f in /vmtest/argv/*; do
    [ -e "$f" ] || continue
    a=$(cat "$f"; printf x)
    set -- "$@" "${a%x}"
done

case "$mode" in
exec)
    # Through /usr/bin/env: this script runs in busybox's standalone shell, which would
    # otherwise run its own applets for the user's "sh", "mount", ... instead of Debian's.
    /usr/bin/env "$@" </dev/vmtest/stdin >/dev/vmtest/stdout 2>/dev/vmtest/stderr
    echo "$?" >/dev/vmtest/status
    finish
    ;;
agent)
    "$@"
    finish
    ;;
*)
    echo "vmtest-stage2: FATAL: unknown mode $mode" >/dev/console
    exit 1
    ;;
esac
