# The shop worker: pretends to drain a queue, one line a minute.
b=/bin/busybox
trap 'exit 0' TERM INT
while :; do echo "worker: queue ${QUEUE:-none} is empty"; $b sleep 60 & wait $!; done
