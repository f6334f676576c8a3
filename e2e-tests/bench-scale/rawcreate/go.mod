module dask-on-k8s/bench-scale/rawcreate

go 1.26
