// The storage account: the Functions host's own storage (AzureWebJobsStorage, identity-based) and the
// service's tables. The deployment package lives in its own account (package-storage.bicep), so the
// runtime identity, which owns this account's blobs as the host needs, cannot overwrite its own code.
// Shared-key (account key and SAS) access is disabled, so only Entra identities with RBAC roles get in.
param name string
param location string
param tags object

@description('Private networking: no public network access; reachable through private endpoints only.')
param privateNetworking bool = false

@description('Prefix of every table name (MC_TABLE_PREFIX).')
param tablePrefix string = ''

@description('Replication. Geo-redundant by default (the tables are the account registry); pick Standard_ZRS or Standard_LRS in a region without a paired region.')
@allowed([
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
  'Standard_ZRS'
  'Standard_LRS'
])
param skuName string = 'Standard_GRS'

// The tables the code uses: shared/tables/__init__.py TABLES, except `secrets`, which only the local
// (non-Azure) secret store uses. tests/test_infra.py compares the two lists.
var serviceTables = [
  'accounts'
  'principals'
  'flows'
  'links'
  'apps'
  'apitokens'
  'outbox'
  'webhooks'
  'deliveries'
  'accountcounts'
  'datakeys'
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in serviceTables: {
  parent: tableService
  name: '${tablePrefix}${table}'
}]

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
